"""Which series of a study is which modality: a small rule table a technologist can read.

A PACS study holds many series (localizers, reformats, diffusion, the sequences the model wants, maybe
twice). Each series is described by a :class:`SeriesInfo` (from QIDO-RS, from C-STORE'd headers, or from
the files of an uploaded study); :func:`select_series` picks, for each modality the model needs, the one
series that fits the rules below, and says why any other series was not used.

The rules, in order (a series must pass all):

1. ``Modality`` is ``MR``.
2. ``ImageType`` (when known) starts with ``ORIGINAL``: reformats (MPR), projections and maps are
   ``DERIVED``.
3. At least ``min_slices`` instances (a localizer has 1 to 5): a 3D stack is needed.
4. Its ``SeriesDescription`` or ``ProtocolName`` matches the modality's pattern and none of the excluded
   patterns (:data:`RULES`, case-insensitive regular expressions).

If several series qualify for one modality the one with the most instances wins (the thinnest slices),
then the highest series number (a repeated acquisition is usually the better one). A series named for
one modality only is never used for another. The caller may skip the patterns by naming the series
itself (``series`` given to the DICOMweb route): then rules 1-3 still apply and a single named series is
taken for every needed modality of a one-modality model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from app.errors import ApiError

MIN_SLICES = 16

# Post-contrast markers, shared by the T1c rule and the T1 exclusion.
_CONTRAST = r"(\+\s*c\b|\bc\s*\+|post|gad|\bgd\b|contrast|\bce\b|t1c|mprage.*\+|\bkm\b)"

RULES: dict[str, tuple[str, str]] = {
    # modality: (pattern that must match, pattern that must not)
    "flair": (r"flair|dark[\s_-]*fluid|\btirm\b", r"\bt1\b.*flair|t1[\s_-]*flair"),
    "t1c": (
        rf"((t1|mprage|spgr|bravo|vibe|tfl|mp2?rage|fspgr).*{_CONTRAST})|({_CONTRAST}.*(t1|mprage|spgr|bravo|vibe))",
        r"flair|\bt2\b|sub(traction)?\b",
    ),
    "t1": (r"\bt1|t1w|mprage|mp2rage|spgr|bravo|\btfl\b|t1[\s_-]*flair", _CONTRAST + r"|\bt2\b"),
    "t2": (
        r"\bt2|t2w|\btse\b",
        r"flair|dark\s*fluid|\btirm\b|t2\s*\*|t2star|\bswi\b|\bgre\b|\bhemo|\bdwi\b|\bdti\b|perf",
    ),
}

# Never a structural input, whatever else the name says.
EXCLUDED = re.compile(r"localizer|localiser|scout|survey|\bmpr\b|reformat|\badc\b|\bdwi\b|diffusion|perfusion|\bmip\b")


@dataclass(frozen=True)
class SeriesInfo:
    """What the rules look at; no patient values. ``image_type`` is the list of ImageType values."""

    uid: str
    modality: str = ""
    description: str = ""
    protocol: str = ""
    image_type: tuple[str, ...] = ()
    instances: int = 0
    number: int | None = None

    def label(self) -> str:
        """How messages name a series: its number and description (technical names, never patient data)."""
        return f'series {self.number if self.number is not None else "?"} "{self.description or "no description"}"'


@dataclass
class Selection:
    """The series chosen per modality, and a sentence per series that was not used."""

    chosen: dict[str, SeriesInfo]
    skipped: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict:
        return {
            "chosen": {
                m: {"series_uid": s.uid, "label": s.label(), "instances": s.instances} for m, s in self.chosen.items()
            },
            "skipped": self.skipped,
        }


def _usable(series: SeriesInfo, min_slices: int) -> str | None:
    """Why ``series`` cannot be a structural input (rules 1-3), or None."""
    if series.modality.upper() != "MR":
        return f"modality {series.modality or 'unknown'}, not MR"
    if series.image_type and series.image_type[0].upper() != "ORIGINAL":
        return f"image type {'/'.join(series.image_type)} (derived, not acquired)"
    if series.instances < min_slices:
        return f"{series.instances} instances, fewer than {min_slices}"
    return None


def modalities_of(series: SeriesInfo) -> list[str]:
    """The modalities whose rule this series' description or protocol name matches (rule 4)."""
    # Underscores, dashes and dots separate words in sequence names ("t1_mprage_gd"); regex \b would not.
    names = re.sub(r"[_\-./]+", " ", " ".join(filter(None, (series.description, series.protocol))).lower())
    if not names or EXCLUDED.search(names):
        return []
    return [m for m, (want, avoid) in RULES.items() if re.search(want, names) and not re.search(avoid, names)]


def _rank(series: SeriesInfo) -> tuple[int, int]:
    return series.instances, series.number if series.number is not None else -1


def _candidates(usable: list[SeriesInfo], needed: list[str], skipped: dict[str, str]) -> dict[str, list[SeriesInfo]]:
    """The usable series whose names match each needed modality; the others are noted in ``skipped``."""
    candidates: dict[str, list[SeriesInfo]] = {m: [] for m in needed}
    for series in usable:
        matched = [m for m in modalities_of(series) if m in candidates]
        for modality in matched:
            candidates[modality].append(series)
        if not matched:
            skipped[series.uid] = f"{series.label()}: its name matches no needed modality ({', '.join(needed)})"
    return candidates


def _refuse_ambiguous(modality: str, ranked: list[SeriesInfo]) -> None:
    """422 ``ambiguous_study`` naming each candidate when more than one series qualifies as ``modality``."""
    if len(ranked) < 2:
        return
    listed = "; ".join(f"{s.label()} ({s.instances} images, SeriesInstanceUID {s.uid})" for s in ranked)
    raise ApiError(
        422,
        "ambiguous_study",
        f"the study has {len(ranked)} series that qualify as {modality}: {listed}; send the one to use "
        f'under the field "{modality}" (and each other modality under its own field) instead of "study"',
    )


def select_series(
    available: list[SeriesInfo],
    needed: list[str],
    *,
    named: bool = False,
    min_slices: int = MIN_SLICES,
    refuse_ambiguous: bool = False,
) -> Selection:
    """One series per modality in ``needed`` (the model card's order), or 422 ``series_not_found``.

    ``named``: the caller chose ``available`` explicitly; with a one-modality model a single usable
    series is taken whatever its name. ``refuse_ambiguous``: several qualifying series for one modality
    are a 422 ``ambiguous_study`` naming each (number, description, SeriesInstanceUID) instead of the
    ranking below; the study upload uses it, since its sender can resend the chosen series by field.
    """
    skipped: dict[str, str] = {}
    usable: list[SeriesInfo] = []
    for series in available:
        reason = _usable(series, min_slices)
        if reason:
            skipped[series.uid] = f"{series.label()}: {reason}"
        else:
            usable.append(series)
    if named and len(needed) == 1 and len(usable) == 1:
        return Selection({needed[0]: usable[0]}, skipped)
    candidates = _candidates(usable, needed, skipped)
    chosen = {}
    for modality in needed:
        ranked = sorted(candidates[modality], key=_rank, reverse=True)
        if not ranked:
            raise ApiError(
                422,
                "series_not_found",
                f"no series of the study qualifies as {modality} (MR, ORIGINAL, at least {min_slices} slices, "
                f"a name matching the rule table); series seen: {len(available)}; "
                + ("; ".join(skipped.values()) or "none")[:800],
            )
        if refuse_ambiguous:
            _refuse_ambiguous(modality, ranked)
        chosen[modality] = ranked[0]
        for other in ranked[1:]:
            skipped.setdefault(other.uid, f"{other.label()}: another {modality} series ranked higher")
    return Selection(chosen, skipped)


def describe_files(paths: list[Path]) -> dict[str, tuple[SeriesInfo, list[Path]]]:
    """Group DICOM files by series and describe each series from its headers (no pixels are read).

    Files that are not DICOM, or lack a SeriesInstanceUID, are ignored: the caller decides whether an
    empty result is an error. Returns ``{series UID: (info, files)}``.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[str, list[tuple[Path, object]]] = {}
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError):
            continue
        uid = ds.get("SeriesInstanceUID")
        if uid:
            groups.setdefault(str(uid), []).append((path, ds))
    described = {}
    for uid, members in groups.items():
        first = members[0][1]
        image_type = first.get("ImageType") or ()
        number = first.get("SeriesNumber")
        info = SeriesInfo(
            uid=uid,
            modality=str(first.get("Modality", "")),
            description=str(first.get("SeriesDescription", "")),
            protocol=str(first.get("ProtocolName", "")),
            image_type=tuple(str(v) for v in (image_type if not isinstance(image_type, str) else [image_type])),
            instances=len(members),
            number=int(number) if number not in (None, "") else None,
        )
        described[uid] = (info, [p for p, _ in members])
    return described
