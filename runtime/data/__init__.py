"""Load preference pairs (prompt, chosen reply, rejected reply) from local files, ``datasets``
folders and Hugging Face Hub datasets in the cache.

Entry point: :func:`load_pairs`. It returns a :class:`LoadResult` in which every input row is
accounted for: it became a :class:`Pair`, or an :class:`Exclusion` with a reason, its position
(1-based line, or record number for table formats) and a short preview. Nothing is dropped
silently (``usable + excluded == input_rows``); :func:`write_excluded` writes the excluded rows
as JSON Lines, and :attr:`LoadResult.alarm` says when most (> 50 %) or all rows were excluded.

Modules: :mod:`.core` (the data model), :mod:`.readers` (one reader per file type),
:mod:`.hub` (Hub ids), :mod:`.formats` (format vote and converters), :mod:`.mapping` (column
mappings and their TOML file), :mod:`.fields` (reading one field), :mod:`.accounting`
(previews, the excluded-rows file), :mod:`.load` (:func:`load_pairs`).

Sources
-------
``.jsonl`` and ``.jsonl.gz`` (JSON Lines, read line by line, so one bad line is one
``undecodable`` row, not a failed load; blank lines are not rows but count as lines; a UTF-8 BOM
and CRLF line ends are accepted), ``.json`` (a JSON array of objects, read element by element;
a ``.json`` file that holds JSON Lines is read as JSON Lines), ``.csv`` (a header row, then
records read with the standard ``csv`` module, so each keeps its line; an empty field is a null,
other values are text; a record with more or fewer fields than the header is one
``undecodable`` row), ``.parquet`` (read with Hugging Face ``datasets``), a folder written by
``datasets.Dataset.save_to_disk`` (a ``DatasetDict`` folder needs ``split`` unless it has one
split), or a Hub id ``org/name`` that is not a local path (``datasets.load_dataset`` with
``subset`` and ``split``, from the cache; under ``HF_HUB_OFFLINE=1`` an uncached id is a
:class:`DataError` naming the id and the cache folder). Parquet files go through a temporary
``datasets`` cache with ``keep_in_memory=True``, so loading local data leaves nothing under
``HF_HOME``; progress bars and ``datasets`` logs are switched off during a load and restored
after.

Per row, these never fail the load: invalid UTF-8, invalid JSON, a JSON value that is not an
object, nesting too deep for the parser, an integer over 4,300 digits, a lone surrogate
(``\\ud800``: text that cannot be written as UTF-8) anywhere in the row. Each is one
``undecodable`` row.

Formats (recognised per file by a vote of the rows)
---------------------------------------------------
Each decodable row is classified by its own keys (for a table: the columns where it has a
value), by the first rule that fits: ``prompt``+``chosen``+``rejected`` (trl);
``chosen``+``rejected`` (hh-rlhf transcripts, or trl's implicit prompt); a prompt column,
``response1``/``response2`` and ``annotatorN`` columns (pandalm); a prompt column, a response
pair and a label column (pairwise). The class most rows share is the file's format (a tie goes
to the class of the earliest row); a row of another class is excluded as ``format_mismatch``
(one stray row with a ``prompt`` key, even ``null``, in an hh-rlhf file excludes only itself). A
row that fits no class is read with the file's format and excluded for what it lacks.

``trl``
    ``prompt``/``chosen``/``rejected``. ``prompt`` is a string (it becomes one user message) or
    a list of ``{"role", "content"}`` messages; ``chosen``/``rejected`` are strings or lists
    holding exactly one (assistant) message, whose content is the reply. Content given as a
    list of ``{"type": "text", "text": ...}`` parts is joined.
``hh-rlhf``
    ``chosen``/``rejected`` without ``prompt``: whole dialogue transcripts
    (``"\\n\\nHuman: …\\n\\nAssistant: …"``). The prompt is the longest common character prefix
    of the two, cut back to the end of the last ``"\\n\\nAssistant:"`` it contains; the two
    remainders, without leading whitespace, are the replies (a remainder can hold more than one
    turn). The prompt transcript is split into user (``Human:``) and assistant
    (``Assistant:``) messages, each stripped; text before the first turn marker, if any,
    becomes a ``system`` message. (When ``chosen``/``rejected`` hold message lists instead,
    this is trl's implicit-prompt form: the prompt is the longest common list of messages, and
    each side must have exactly one message after it; the format is then reported as ``trl``.)
``pandalm``
    ``response1``/``response2`` with annotator columns ``annotator1``, ``annotator2``, …
    (values ``0`` = tie, ``1`` = response1 better, ``2`` = response2 better, as in PandaLM's
    test set). The label that more than half of the annotators gave wins; label ``0`` or no
    such majority makes the row a ``tie``. The prompt is ``instruction``, plus
    ``"\\n\\n" + input`` when ``input`` is not blank (or ``prompt`` / ``question``).
``pairwise``
    a pair of responses, ``response_a``/``response_b``, ``answer_a``/``answer_b`` or
    ``response1``/``response2``, a label column ``label``, ``preference`` or ``winner`` (the
    first present), and a prompt column ``prompt`` (string or messages), ``instruction``
    (+ ``input``) or ``question``. Accepted label values (strings case- and
    space-insensitive):

    - first response better: ``"a"``, ``"model_a"``, ``"response_a"``, ``"answer_a"``,
      ``"response1"``;
    - second response better: ``"b"``, ``"model_b"``, ``"response_b"``, ``"answer_b"``,
      ``"response2"``;
    - tie: ``"tie"``, ``"tie (bothbad)"``, ``"draw"``, ``"equal"``, ``"same"``, ``"both"``,
      ``"neither"``;
    - integers (or digit strings, or integral floats) depend on how the responses are named:
      with ``*_a``/``*_b`` they are a 0-based index, ``0`` = a, ``1`` = b; with
      ``response1``/``response2`` they are PandaLM's ``1`` = response1, ``2`` = response2,
      ``0`` = tie.

    Any other value (booleans included) excludes the row as ``missing_field``.
``rated`` (only through a column mapping)
    two responses with a score each: the higher score wins, equal scores are a ``tie``.

Any other layout is read through a column mapping (:mod:`.mapping`): ``columns=`` or a
``<data>.ethos.toml`` file beside the data. The mapping used is :attr:`LoadResult.mapping`.

Other columns of a row are kept in ``Pair.meta`` (for ``pairwise``, ``pandalm`` and mapped
labels or scores that includes the label, annotator or score columns, so the original side
stays traceable).

Exclusion reasons (:data:`REASONS`)
-----------------------------------
A row gets the first that applies: decoding, then the format vote (``format_mismatch``), then
each field as it is read (``missing_field`` / ``not_text``), then the label (``tie``), then the
blank-prompt check, ``identical``, ``empty_reply`` and ``too_long``.

``undecodable``
    a row that could not be decoded (see above), or an element of a JSON array that is not an
    object.
``format_mismatch``
    the row's columns are those of another format than the file's.
``missing_field``
    a needed field is absent or null (or, for hh-rlhf, the two transcripts share no
    ``"\\n\\nAssistant:"`` turn, so there is no prompt; or the prompt is blank; or a label
    value is not one of the accepted ones; or a score is not a number).
``not_text``
    a field has the wrong type: not a string, not a well-formed message list, or a reply list
    with other than one message.
``tie``
    the label says neither response is better (or the annotators have no majority, or the
    scores are equal).
``identical``
    chosen == rejected (exactly, after extraction).
``empty_reply``
    chosen or rejected is empty or only whitespace.
``too_long``
    prompt contents + chosen + rejected exceed ``max_chars`` characters.

With ``strict=True`` the first exclusion raises :class:`DataError` instead, naming the row's line
(``line N``, from 1) or, for table formats, its record (``record N``, from 1).
"""

from __future__ import annotations

from .accounting import excluded_rows, write_excluded
from .core import (
    DEFAULT_DATA,
    DEFAULT_SOURCE,
    EXTENSIONS,
    FORMATS,
    REASONS,
    DataError,
    Exclusion,
    LoadResult,
    Message,
    Pair,
    messages_to_text,
)
from .load import load_pairs
from .mapping import ROLES, ColumnMapping, build_mapping, mapping_file_for, parse_columns

__all__ = [
    "DEFAULT_DATA",
    "DEFAULT_SOURCE",
    "EXTENSIONS",
    "FORMATS",
    "REASONS",
    "ROLES",
    "ColumnMapping",
    "DataError",
    "Exclusion",
    "LoadResult",
    "Message",
    "Pair",
    "build_mapping",
    "excluded_rows",
    "load_pairs",
    "mapping_file_for",
    "messages_to_text",
    "parse_columns",
    "write_excluded",
]
