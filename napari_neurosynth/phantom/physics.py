"""MR physics of the phantom: relaxation values at 1.5 T and 3 T, sequences, protocols, signal equations.

Every literature number carries its source in a comment; ``docs/phantom.md``
repeats the tables with the full references.  Values marked *heuristic* are the
phantom's own choices (inside published ranges where such ranges exist) that only
have to give the conspicuity a radiologist expects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import NeurosynthError

__all__ = [
    "Tissue",
    "TISSUES",
    "TISSUES_BY_FIELD",
    "FIELD_STRENGTHS",
    "Sequence",
    "SEQUENCES",
    "PROTOCOL_RANGES",
    "M0",
    "tissues_at",
    "tissue_signal",
    "flair_null_ti",
    "make_protocol",
    "protocol_dict",
]


@dataclass(frozen=True)
class Tissue:
    """Relaxation parameters of one tissue (times in ms, PD = water content relative to CSF)."""

    t1: float
    t2: float
    pd: float
    source: str


# --------------------------------------------------------------------------------------
# Relaxation values
# --------------------------------------------------------------------------------------

#: Field strengths (tesla) the phantom has relaxation values for.
FIELD_STRENGTHS = (1.5, 3.0)

# Iron and T2.  Transverse relaxation in grey matter rises linearly with non-haem iron:
# Gelman N et al., Radiology 1999;210:759-767 measured at 3 T R2 = 25.8 s^-1 in the globus
# pallidus, 18.0 s^-1 in frontal WM and 14.4 s^-1 in prefrontal cortex, with an
# iron-independent intercept of 12.7 s^-1, i.e. a slope of (25.8 - 12.7) / 21.3 = 0.615 s^-1
# per mg Fe / 100 g fresh weight (iron concentrations of Hallgren B, Sourander P, J Neurochem
# 1958;3:41-51).  Gelman's frontal WM T2 (55.6 ms) is shorter than the WM T2 used here (80 ms,
# Wansapura 1999) because the methods differ; the slope is scaled by the same ratio so that the
# iron effect keeps its measured size relative to WM.
_R2_PER_IRON_3T = 0.615 * (1000.0 / 80.0) / 18.0  # s^-1 per mg/100 g, ~0.43 in this phantom's T2 frame
# The iron (ferritin) part of R2 grows linearly with B0 (Bartzokis G et al., MRM 1993;29:459-464,
# "field-dependent R2 increase"), so at 1.5 T it is half of that at 3 T.
_IRON_FIELD_FACTOR = {1.5: 0.5, 3.0: 1.0}
# Non-haem iron, mg / 100 g fresh weight (Hallgren & Sourander 1958): globus pallidus 21.3,
# red nucleus 19.5, substantia nigra 18.5, putamen 13.3, caudate 9.3, thalamus 4.8, frontal
# WM 4.2, cortex ~3.  The dentate nucleus is given 15 (Hallgren & Sourander list ~10 in young
# adults; its T2 hypointensity is established by adolescence, Aoki S et al., Radiology
# 1989;172:381-385, and increases with age).
_IRON = {"gm": 3.0, "wm": 4.2}

# Relaxation rates of the phantom's cortical GM and WM at 3 T (1 / T2 in s^-1), the bases the
# nuclei are built from.
_R2 = {"gm": 1000.0 / 110.0, "wm": 1000.0 / 80.0}


def _nucleus_t2(wm_weight: float, iron: float, field: float) -> float:
    """T2 (ms) of a deep grey nucleus: a GM/WM base rate plus the rate of its extra iron.

    ``wm_weight`` is the share of myelinated fibres in the base (0 = cortex-like,
    1 = WM-like); iron is in mg / 100 g fresh weight.

    Examples
    --------
    >>> round(_nucleus_t2(0.7, 21.3, 3.0), 1)  # globus pallidus at 3 T
    52.8
    >>> round(_nucleus_t2(0.7, 21.3, 1.5), 1)  # iron matters half as much at 1.5 T
    65.8
    """
    base_rate = (1 - wm_weight) * _R2["gm"] + wm_weight * _R2["wm"]
    base_iron = (1 - wm_weight) * _IRON["gm"] + wm_weight * _IRON["wm"]
    rate = base_rate + _IRON_FIELD_FACTOR[field] * _R2_PER_IRON_3T * (iron - base_iron)
    return 1000.0 / rate


# Deep grey nuclei: (T1 at 3 T in ms, PD, WM share of the T2 base, iron mg/100 g).
# T1 at 3 T: the ordering and magnitudes of Gelman N et al., MRM 2001;45:71-79 (R1 at 3 T:
# globus pallidus close to frontal WM, putamen and caudate between WM and cortex, thalamus
# between them); for the midbrain and cerebellar nuclei (iron- and fibre-rich) values between
# WM and thalamus are assumed.  PD: water content, WM-like nuclei lower than striatum (Gelman
# 2001's water estimates; Neeb H et al., NeuroImage 2006;29:910-922).
_NUCLEI_SPEC = {
    "caudate": (1250.0, 0.82, 0.1, 9.3),
    "putamen": (1130.0, 0.80, 0.15, 13.3),
    "globus_pallidus": (840.0, 0.74, 0.7, 21.3),
    "thalamus": (1050.0, 0.76, 0.5, 4.8),
    "substantia_nigra": (920.0, 0.75, 0.5, 18.5),
    "red_nucleus": (880.0, 0.75, 0.7, 19.5),
    "dentate": (950.0, 0.76, 0.5, 15.0),
}

#: The deep grey nuclei, in label order (``tissues=True`` gives their label map).
NUCLEI = tuple(_NUCLEI_SPEC)

# T1 at 1.5 T as a fraction of T1 at 3 T.  Brain parenchyma: Stanisz GJ et al., MRM
# 2005;54:507-512 (WM 884 ms at 1.5 T vs 1084 ms at 3 T: 0.82).  Fat: Gold GE et al., AJR
# 2004;183:343-351 (subcutaneous fat 343 vs 382 ms: 0.90).  Muscle: 0.75, between Gold 2004
# and Stanisz 2005.  Blood: Stanisz 2005 (1441 vs 1932 ms: 0.75).  Nearly free water (CSF,
# vitreous) hardly changes between 1.5 and 3 T: 1.0.
_T1_RATIO_1P5 = {"brain": 0.82, "fluid": 1.0, "fat": 0.90, "muscle": 0.75, "blood": 0.75, "other": 0.85}

# name: (T1 3 T, T2 3 T, PD, class for the 1.5 T T1 ratio, source).  Outside the iron-rich nuclei
# T2 is taken as field independent (Stanisz 2005: "T2 ... at 3 T were similar to those at 1.5 T").
_TABLE_3T: dict[str, tuple[float, float, float, str, str]] = {
    # Wansapura JP, Holland SK, Dunn RS, Ball WS, JMRI 1999;9:531-538 (frontal WM / cortical GM
    # T1 832 / 1331 ms, T2 80 / 110 ms at 3 T); PD: Neeb 2006 / Whittall KP et al. MRM
    # 1997;37:34-43 (WM ~0.69-0.71, GM ~0.80-0.83).
    "wm": (832.0, 80.0, 0.69, "brain", "Wansapura 1999 JMRI (T1, T2); Neeb 2006 / Whittall 1997 (PD)"),
    "gm": (1331.0, 110.0, 0.80, "brain", "Wansapura 1999 JMRI (T1, T2); Neeb 2006 / Whittall 1997 (PD)"),
    # Lu H et al., JMRI 2005;22:13-22 (CSF T1 4163 ms at 3 T); bulk CSF T2 ~1.5-2.5 s.
    "csf": (4163.0, 2000.0, 1.00, "fluid", "Lu 2005 JMRI (T1); typical bulk-CSF T2"),
    # Choroid plexus: vascular stroma under an epithelium; near GM on T1w and T2w (heuristic).
    "choroid_plexus": (1200.0, 120.0, 0.85, "brain", "heuristic: near GM on T1w/T2w"),
    # ---- lesions
    # Tumour and vasogenic oedema: longer T1 and T2 than NAWM (more free water); quantitative
    # glioma studies report oedema T1 ~1.3-1.8x and T2 ~1.8-2.5x NAWM (e.g. Blystad I et al.,
    # PLoS One 2017;12:e0177135).
    "tumour": (1800.0, 150.0, 0.85, "brain", "within ranges of quantitative glioma MRI (e.g. Blystad 2017)"),
    "necrosis": (2500.0, 400.0, 0.95, "fluid", "fluid-like necrotic centre; heuristic"),
    "oedema": (1500.0, 180.0, 0.88, "brain", "within ranges of peritumoral oedema (e.g. Blystad 2017)"),
    # MS plaque, T2/FLAIR bright yet iso-intense on T1w: ~1.2x WM T1, ~1.6x WM T2 and ~10% more
    # water than NAWM (Laule C et al., J Neurol 2004;251:284-293), whose extra PD cancels the T1
    # lengthening at TR = 500 ms.
    "plaque": (1000.0, 130.0, 0.76, "brain", "tuned inside MS-lesion ranges (Laule 2004 water content)"),
    # Chronic "black hole": T1 hypointense plaque with axonal loss and a larger extracellular
    # space (van Walderveen MA et al., Neurology 1998;50:1282-1288); T1 ~2.3x NAWM, long T2.
    "black_hole": (1900.0, 220.0, 0.88, "brain", "T1 ~2.3x NAWM, fluid-rich (van Walderveen 1998)"),
    # Late subacute haematoma: extracellular methaemoglobin shortens T1 (bright on T1w) while T2
    # stays long (bright on T2w), Bradley WG, Radiology 1993;189:15-26.
    "haemorrhage": (400.0, 250.0, 0.90, "brain", "extracellular methaemoglobin (Bradley 1993 Radiology)"),
    # ---- head outside the brain
    # Subcutaneous fat: Gold 2004 (T1 ~380 ms, T2 ~70 ms at 3 T).
    "fat": (380.0, 70.0, 0.90, "fat", "Gold 2004 AJR (subcutaneous fat, 3 T)"),
    # Fatty (yellow) diploic marrow: fat-dominated, a little longer T1 than pure fat (heuristic,
    # cf. the marrow values of Gold 2004).
    "marrow": (420.0, 60.0, 0.85, "fat", "fatty diploic marrow; heuristic near fat (cf. Gold 2004)"),
    # Skeletal muscle (temporalis, extraocular muscles): Stanisz 2005 (T1 1412 ms, T2 50 ms, 3 T).
    "muscle": (1412.0, 50.0, 0.75, "muscle", "Stanisz 2005 MRM (skeletal muscle, 3 T)"),
    # Skin (dermis): collagen-rich, short T2 (heuristic).
    "skin": (1000.0, 40.0, 0.70, "muscle", "dermis; heuristic"),
    # Cortical bone: T2 well below 1 ms, no spin-echo signal at clinical TE.
    "bone": (250.0, 0.5, 0.10, "other", "cortical bone: T2 << TE, no signal (heuristic)"),
    # Vitreous humour: ~99 % water, CSF-like (nulled on FLAIR).
    "vitreous": (4000.0, 1500.0, 1.00, "fluid", "vitreous: ~99 % water, CSF-like (heuristic)"),
    # Lens: dense crystallins, short T2 (dark on T2w), intermediate on T1w (heuristic).
    "lens": (1000.0, 25.0, 0.60, "other", "lens: protein-dense, short T2 (heuristic)"),
    "sclera": (1000.0, 15.0, 0.50, "other", "sclera: fibrous, short T2 (heuristic)"),
    # Flowing blood.  Stanisz 2005: blood T1 1932 ms, T2 275 ms at 3 T.  In fast flow the spins
    # excited by the 90-degree pulse leave the slice before the 180-degree refocusing pulse, so a
    # spin echo shows a flow void (Bradley WG, Waluch V, Radiology 1985;154:443-450): the
    # effective PD is ~0.
    "flow": (1932.0, 275.0, 0.02, "blood", "Stanisz 2005 (blood T1/T2); flow void on spin echo (Bradley 1985)"),
}


def _build_table(field: float) -> dict[str, Tissue]:
    table: dict[str, Tissue] = {}
    for name, (t1, t2, pd, kind, source) in _TABLE_3T.items():
        ratio = 1.0 if field == 3.0 else _T1_RATIO_1P5[kind]
        t2_field = 290.0 if (name == "flow" and field == 1.5) else t2  # Stanisz 2005: blood T2 290 ms at 1.5 T
        suffix = "" if field == 3.0 else f"; 1.5 T: T1 x {ratio:g} (see docs/phantom.md)"
        table[name] = Tissue(round(t1 * ratio, 1), t2_field, pd, source + suffix)
    for name, (t1, pd, wm_weight, iron) in _NUCLEI_SPEC.items():
        ratio = 1.0 if field == 3.0 else _T1_RATIO_1P5["brain"]
        t2 = round(_nucleus_t2(wm_weight, iron, field), 1)
        table[name] = Tissue(
            round(t1 * ratio, 1),
            t2,
            pd,
            f"T1: Gelman 2001 MRM ordering; T2: GM/WM base + iron {iron:g} mg/100 g "
            f"(Hallgren 1958) at {_R2_PER_IRON_3T * _IRON_FIELD_FACTOR[field]:.2f} s^-1 per mg/100 g "
            "(Gelman 1999 Radiology; Bartzokis 1993 field dependence)",
        )
    return table


#: Relaxation values per field strength (tesla): ``TISSUES_BY_FIELD[1.5]["wm"].t1``.
TISSUES_BY_FIELD: dict[float, dict[str, Tissue]] = {f: _build_table(f) for f in FIELD_STRENGTHS}

#: Tissue parameters at 3 T (the default field strength).
TISSUES: dict[str, Tissue] = TISSUES_BY_FIELD[3.0]


def check_field_strength(field_strength: Any) -> float:
    """The field strength as one of :data:`FIELD_STRENGTHS`, or a :class:`NeurosynthError`.

    Examples
    --------
    >>> check_field_strength(3), check_field_strength("1.5")
    (3.0, 1.5)
    """
    try:
        value = float(field_strength)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(field_strength, bool) or not any(abs(value - f) < 1e-6 for f in FIELD_STRENGTHS):
        raise NeurosynthError(
            f"field_strength must be 1.5 or 3.0 (tesla; the phantom has relaxation values for these), "
            f"got {field_strength!r}"
        )
    return min(FIELD_STRENGTHS, key=lambda f: abs(f - value))


def tissues_at(field_strength: float = 3.0) -> dict[str, Tissue]:
    """The tissue table at ``field_strength`` tesla (1.5 or 3.0).

    Examples
    --------
    >>> tissues_at(1.5)["wm"].t1 < tissues_at(3.0)["wm"].t1  # T1 is shorter at lower field
    True
    >>> tissues_at(3.0)["globus_pallidus"].t2 < 0.7 * tissues_at(3.0)["wm"].t2  # iron-rich: short T2
    True
    """
    return TISSUES_BY_FIELD[check_field_strength(field_strength)]


# --------------------------------------------------------------------------------------
# Sequences and protocols
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sequence:
    """A 2-D spin-echo (``kind='se'``) or inversion-recovery (``kind='ir'``) sequence (times in ms)."""

    kind: str
    tr: float
    te: float
    ti: float | None = None


def flair_null_ti(t1: float, tr: float) -> float:
    """Inversion time (ms) that nulls a tissue of longitudinal relaxation ``t1`` at ``tr``.

    Solves ``1 - 2 exp(-TI/T1) + exp(-TR/T1) = 0``.

    Examples
    --------
    >>> round(flair_null_ti(4163.0, 9000.0))
    2432
    >>> round(flair_null_ti(1000.0, 1e9) / 1000.0, 3)  # ln 2 * T1 for infinite TR
    0.693
    """
    return float(t1 * math.log(2.0 / (1.0 + math.exp(-tr / t1))))


#: The default protocol (ms).  PDw uses a long TR because CSF T1 at 3 T is ~4.2 s: with
#: TR = 5000 ms CSF would still be iso-intense to GM.
SEQUENCES: dict[str, Sequence] = {
    "t1": Sequence("se", tr=500.0, te=10.0),
    "t2": Sequence("se", tr=5000.0, te=100.0),
    "pd": Sequence("se", tr=8000.0, te=10.0),
    "flair": Sequence("ir", tr=9000.0, te=100.0, ti=round(flair_null_ti(TISSUES["csf"].t1, 9000.0))),
}

#: Ranges (ms) that ``protocol="random"`` draws TR and TE from, uniformly per subject: clinical 2-D
#: spin-echo / FLAIR brain protocols at 1.5-3 T (e.g. Lu 2005 JMRI for 3 T routine brain
#: sequences).  FLAIR's TI nulls CSF at the drawn TR, times ``1 +- ti_tolerance``.
PROTOCOL_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "t1": {"tr": (400.0, 700.0), "te": (8.0, 20.0)},
    "t2": {"tr": (2500.0, 6000.0), "te": (80.0, 120.0)},
    "pd": {"tr": (2000.0, 4000.0), "te": (10.0, 30.0)},
    "flair": {"tr": (8000.0, 11000.0), "te": (80.0, 140.0), "ti_tolerance": (-0.03, 0.03)},
}

#: Arbitrary scanner gain: M0 such that WM on T1w is ~800 units.
M0 = 3000.0


def _null_ti(field: float, tr: float) -> float:
    return float(round(flair_null_ti(tissues_at(field)["csf"].t1, tr)))


def _check_sequence(name: str, seq: Sequence) -> Sequence:
    for key in ("tr", "te") + (("ti",) if seq.kind == "ir" else ()):
        value = getattr(seq, key)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise NeurosynthError(f"protocol {name}: {key.upper()} must be a positive number of ms, got {value!r}")
    if seq.te >= seq.tr:
        raise NeurosynthError(f"protocol {name}: TR ({seq.tr:g} ms) must be longer than TE ({seq.te:g} ms)")
    if seq.kind == "ir" and seq.ti is not None and seq.ti >= seq.tr:
        raise NeurosynthError(f"protocol {name}: TR ({seq.tr:g} ms) must be longer than TI ({seq.ti:g} ms)")
    if seq.kind == "se" and seq.ti is not None:
        raise NeurosynthError(f"protocol {name}: a spin echo has no TI")
    return seq


def _random_protocol(rng: np.random.Generator, field: float) -> dict[str, Sequence]:
    out = {}
    for name, base in SEQUENCES.items():
        ranges = PROTOCOL_RANGES[name]
        tr = float(round(rng.uniform(*ranges["tr"])))
        te = float(round(rng.uniform(*ranges["te"])))
        ti = None
        if base.kind == "ir":
            ti = float(round(_null_ti(field, tr) * (1.0 + rng.uniform(*ranges["ti_tolerance"]))))
        out[name] = Sequence(base.kind, tr, te, ti)
    return out


def _override(name: str, seq: Sequence, change: Any, field: float) -> Sequence:
    if isinstance(change, Sequence):
        return replace(change, kind=seq.kind)
    if not isinstance(change, Mapping):
        raise NeurosynthError(f"protocol[{name!r}] must be a dict like {{'tr': 500, 'te': 10}}, got {change!r}")
    values = {}
    for key, value in change.items():
        k = str(key).lower().removesuffix("_ms")
        if k not in ("tr", "te", "ti"):
            raise NeurosynthError(f"protocol[{name!r}]: unknown parameter {key!r}; use tr, te or ti (ms)")
        try:
            values[k] = float(value)
        except (TypeError, ValueError):
            raise NeurosynthError(f"protocol[{name!r}][{key!r}] must be a number of ms, got {value!r}") from None
    if "ti" in values and seq.kind != "ir":
        raise NeurosynthError(f"protocol {name}: a spin echo has no TI")
    new = Sequence(seq.kind, values.get("tr", seq.tr), values.get("te", seq.te), values.get("ti", seq.ti))
    if seq.kind == "ir" and "tr" in values and "ti" not in values:
        new = replace(new, ti=_null_ti(field, new.tr))  # keep CSF nulled at the new TR
    return new


def make_protocol(
    protocol: Any = None, rng: np.random.Generator | None = None, field_strength: float = 3.0
) -> dict[str, Sequence]:
    """The sequences of one acquisition.

    Parameters
    ----------
    protocol : None, "default", "random" or dict
        ``None``/``"default"``: :data:`SEQUENCES`.  ``"random"``: TR/TE drawn from
        :data:`PROTOCOL_RANGES` with ``rng`` and FLAIR's TI nulling CSF within a few
        percent.  A dict overrides single sequences (``{"t1": {"tr": 600, "te": 12}}``),
        on top of the default, or of a random draw with ``"base": "random"``.
    rng : numpy.random.Generator, optional
        Needed for random draws.
    field_strength : float
        1.5 or 3.0 T: CSF's T1 there sets the FLAIR null.

    Returns
    -------
    dict of str to Sequence
        One entry per contrast (``t1``, ``t2``, ``pd``, ``flair``).

    Raises
    ------
    NeurosynthError
        For an unknown protocol, sequence or parameter, or TR <= TE / TR <= TI.

    Examples
    --------
    >>> make_protocol()["t1"]
    Sequence(kind='se', tr=500.0, te=10.0, ti=None)
    >>> make_protocol({"flair": {"tr": 11000}})["flair"].ti  # TI follows TR to keep CSF nulled
    2599.0
    >>> p = make_protocol("random", np.random.default_rng(0))
    >>> 400 <= p["t1"].tr <= 700 and 80 <= p["t2"].te <= 120
    True
    """
    field = check_field_strength(field_strength)
    overrides: Mapping = {}
    base = protocol
    if isinstance(protocol, Mapping):
        overrides = {k: v for k, v in protocol.items() if k != "base"}
        base = protocol.get("base", "default")
    if base is None or (isinstance(base, str) and base.lower() == "default"):
        seqs = dict(SEQUENCES)
        if field != 3.0:
            seqs["flair"] = replace(seqs["flair"], ti=_null_ti(field, seqs["flair"].tr))
    elif isinstance(base, str) and base.lower() == "random":
        seqs = _random_protocol(rng if rng is not None else np.random.default_rng(0), field)
    else:
        raise NeurosynthError(f"protocol must be None, 'default', 'random' or a dict of sequences, got {protocol!r}")
    for name, change in overrides.items():
        key = str(name).lower()
        if key not in seqs:
            raise NeurosynthError(f"protocol: unknown sequence {name!r}; choose from {', '.join(SEQUENCES)}")
        seqs[key] = _override(key, seqs[key], change, field)
    return {name: _check_sequence(name, seq) for name, seq in seqs.items()}


def protocol_dict(seq: Sequence) -> dict[str, Any]:
    """JSON-friendly description of a sequence (for volume metadata).

    Examples
    --------
    >>> protocol_dict(SEQUENCES["flair"])
    {'kind': 'inversion recovery', 'TR_ms': 9000.0, 'TE_ms': 100.0, 'TI_ms': 2432}
    """
    d: dict[str, Any] = {
        "kind": "spin echo" if seq.kind == "se" else "inversion recovery",
        "TR_ms": seq.tr,
        "TE_ms": seq.te,
    }
    if seq.ti is not None:
        d["TI_ms"] = seq.ti
    return d


def tissue_signal(tissue: str | Tissue, sequence: str | Sequence, field_strength: float = 3.0) -> float:
    """Signed signal of pure ``tissue`` for ``sequence``, in units of M0.

    The sign matters only for inversion recovery, where partial-volume voxels
    sum signed magnetisations before the magnitude is taken.

    Parameters
    ----------
    tissue : str or Tissue
        A name in :data:`TISSUES` (looked up at ``field_strength``) or explicit values.
    sequence : str or Sequence
        A name in :data:`SEQUENCES` or explicit parameters.
    field_strength : float
        1.5 or 3.0 T, for tissue names.

    Examples
    --------
    >>> tissue_signal("wm", "t1") > tissue_signal("gm", "t1") > tissue_signal("csf", "t1")
    True
    >>> abs(tissue_signal("csf", "flair")) < 0.01
    True
    >>> round(tissue_signal(Tissue(1000.0, 100.0, 1.0, ""), Sequence("se", 1000.0, 100.0)), 4)
    0.2325
    """
    t = tissues_at(field_strength)[tissue] if isinstance(tissue, str) else tissue
    s = SEQUENCES[sequence] if isinstance(sequence, str) else sequence
    decay = math.exp(-s.te / t.t2)
    if s.kind == "se":
        return t.pd * (1.0 - math.exp(-s.tr / t.t1)) * decay
    if s.kind == "ir" and s.ti is not None:
        return t.pd * (1.0 - 2.0 * math.exp(-s.ti / t.t1) + math.exp(-s.tr / t.t1)) * decay
    raise ValueError(f"unknown sequence kind {s.kind!r} (or an inversion recovery without TI)")
