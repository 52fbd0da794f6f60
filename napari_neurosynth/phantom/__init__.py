"""A physically grounded, seeded multi-contrast brain phantom (v2).

Anatomy comes from the MNI152 2009a (symmetric) T1 template and its grey/white
matter probability maps that ``nilearn`` ships inside its wheel (no download),
with deep grey nuclei, choroid plexus, large vessels, eyes and a layered head
(skull, diploe, temporalis, scalp) placed in MNI millimetres.  Tissue fractions
are mapped to T1-, T2-, PD-weighted and FLAIR images through the spin-echo and
inversion-recovery signal equations with literature relaxation values at 1.5 T
or 3 T.  Each seed is a different "subject": a smooth random deformation of the
anatomy, its own skull and scalp, lesions, noise, bias fields and (optionally)
head motion, protocol and field-of-view crop.

This is a synthetic teaching and testing object, not a real subject. See
``docs/phantom.md`` for the model and the sources of every number.

Signal model
------------
Every voxel holds fractions ``f_t`` of tissues ``t`` summing to at most 1 (the
rest is air).  Partial volume mixes the *signals* of the tissues, not their
relaxation rates: the transverse magnetisation of each tissue is computed with its
own T1/T2/PD and the signed sum is taken before the magnitude, which is what a
voxel containing several water compartments measures (and what makes CSF/tissue
boundaries on FLAIR behave like the real thing).

* spin echo (T1w, T2w, PDw):
  ``S = M0 * PD * (1 - exp(-TR/T1)) * exp(-TE/T2)``  (TE << TR)
* inversion recovery (FLAIR):
  ``S = M0 * PD * (1 - 2 exp(-TI/T1) + exp(-TR/T1)) * exp(-TE/T2)``, magnitude
  taken after the partial-volume sum; TI is chosen to null CSF for the given TR:
  ``TI = T1_csf * ln(2 / (1 + exp(-TR/T1_csf)))`` (-> ln2 * T1_csf for TR -> inf).

Modules: :mod:`.physics` (relaxation tables, sequences, protocols),
:mod:`.template` (MNI152, grids, deformation), :mod:`.anatomy` (nuclei, vessels,
eyes), :mod:`.head` (skull and scalp), :mod:`.lesions` (kinds, visibility,
placement) and :mod:`.core` (:func:`make_phantom`).
"""

from __future__ import annotations

from .anatomy import GM_RESTRICTED, NUCLEI_LABELS
from .core import LOWRES_MODES, MISALIGNMENT_SEVERITIES, RANDOM_CROP_MM, RESOLUTION_RANGE, make_phantom
from .head import LAYERS as HEAD_LAYERS
from .lesions import (
    LESION_KIND_LABELS,
    LESION_KINDS,
    LESION_LABEL_KINDS,
    LESION_LABELS,
    LESION_VISIBILITY,
    VISIBILITY_THRESHOLD,
    lesion_contrast,
    lesion_visibility,
)
from .physics import (
    FIELD_STRENGTHS,
    M0,
    NUCLEI,
    PROTOCOL_RANGES,
    SEQUENCES,
    TISSUES,
    TISSUES_BY_FIELD,
    Sequence,
    Tissue,
    flair_null_ti,
    make_protocol,
    tissue_signal,
    tissues_at,
)

__all__ = [
    "make_phantom",
    "LOWRES_MODES",
    "MISALIGNMENT_SEVERITIES",
    "TISSUES",
    "TISSUES_BY_FIELD",
    "FIELD_STRENGTHS",
    "tissues_at",
    "Tissue",
    "SEQUENCES",
    "Sequence",
    "PROTOCOL_RANGES",
    "make_protocol",
    "M0",
    "NUCLEI",
    "NUCLEI_LABELS",
    "GM_RESTRICTED",
    "HEAD_LAYERS",
    "LESION_KINDS",
    "LESION_LABELS",
    "LESION_LABEL_KINDS",
    "LESION_KIND_LABELS",
    "LESION_VISIBILITY",
    "VISIBILITY_THRESHOLD",
    "lesion_contrast",
    "lesion_visibility",
    "RESOLUTION_RANGE",
    "RANDOM_CROP_MM",
    "tissue_signal",
    "flair_null_ti",
]
