"""The training and post-processing methods medseg implements as options of any model (``medseg models --methods``).

Each entry names the method, the papers it follows, how to switch it on, the module that implements it and the
seed rows (the numbered list of networks and methods medseg was built from) it covers. Pure data: no imports.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """One method and where it lives.

    Attributes:
        key: Short name.
        seed_rows: Numbers of the seed items it implements.
        seed_items: Their titles.
        papers: The papers the implementation follows.
        commands: Commands that use it.
        note: What else to know (settings, variants).
        module: The module that implements it.
        stage: ``training``, ``prediction`` or ``training, prediction``.
    """

    key: str
    seed_rows: tuple[int, ...]
    seed_items: tuple[str, ...]
    papers: str
    commands: tuple[str, ...]
    note: str
    module: str
    stage: str


METHODS: tuple[Method, ...] = (
    Method("dense_crf", (8, 90),
           ("Efficient piecewise training of deep structured models (dense CRF)", "DeepLab v1/v2 (atrous + CRF)"),
           "Krähenbühl & Koltun, NIPS 2011; Chen et al., ICLR 2015 / TPAMI 2018; Lin et al., CVPR 2016; "
           "Adams et al., Eurographics 2010 (permutohedral lattice)",
           ("medseg predict --crf dense",), "kernels and iterations: --crf-set key=value",
           "medseg.inference.crf", "prediction"),
    Method("convcrf", (62,), ("Convolutional CRFs",), "Teichmann & Cipolla, arXiv 2018 / BMVC 2019",
           ("medseg predict --crf conv", "medseg train --set crf_layer.enabled=true"),
           "post-processing, or a layer trained with any model", "medseg.models.convcrf", "training, prediction"),
    Method("adversarial", (15,), ("Semantic segmentation using adversarial networks",),
           "Luc, Couprie, Chintala & Verbeek, NIPS Workshop 2016",
           ("medseg train --set adversarial.enabled=true",), "λ: adversarial.weight",
           "medseg.training.adversarial", "training"),
    Method("domain_adaptation", (54, 134),
           ("AdaptSegNet (output-space adaptation)", "MADA-Net (multi-scale adversarial domain aggregation)"),
           "Tsai et al., CVPR 2018 (multi-level output-space adaptation); multi-scale adversarial aggregation",
           ("medseg train --target-manifest TARGET.json",
            "medseg train --target-manifest TARGET.json --set domain_adaptation.method=mada"),
           "AdaptSegNet (multi-level) by default, MADA-Net with method=mada",
           "medseg.training.domain_adaptation", "training"),
    Method("label_relaxation", (103,), ("Video propagation & label relaxation",),
           "Zhu et al., CVPR 2019 (boundary label relaxation; soft-label variant)",
           ("medseg train --set loss=label_relaxation", "medseg train --set loss=soft_label"),
           "window: relaxation_window", "medseg.training.relaxation", "training"),
    Method("coordinates", (73,), ("Pulmonary lobes, coordination-guided",),
           "coordinate channels: normalised voxel or world (RAS mm) positions as input channels",
           ("medseg train --set coordinates=voxel", "medseg train --set coordinates=world"),
           "medseg predict appends them as in training", "medseg.preprocessing.coordinates",
           "training, prediction"),
    Method("cascade", (21, 40), ("Sequential 3D U-Nets (brain tumour)", "Cascaded U-Net (glioma)"),
           "Isensee et al., Nature Methods 2021 (nnU-Net's 3d_lowres → 3d_cascade_fullres)",
           ("medseg train PLANS --config 3d_lowres --fold 0-4",
            "medseg train PLANS --config 3d_cascade_fullres --fold 0-4 --set previous_stage_run=LOWRES_RUN"),
           "the mapping is documented in medseg/training/TRAINING.md; medseg predict runs both stages",
           "medseg.training.cascade", "training, prediction"),
)
