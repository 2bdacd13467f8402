"""Structure of the instance, panoptic and interactive networks against their papers and the authors' code."""

from __future__ import annotations

import math

import pytest
import torch

from medseg.models import create_model, get_model_info
from medseg.models.backbones import create_backbone
from medseg.models.instance.rcnn import assign_levels


def _small(name: str, dims: int = 2, **extra):
    torch.manual_seed(0)
    return create_model(name, dims, 1, 3, **{**get_model_info(name).test_kwargs[dims], **extra})


def test_mask_rcnn_heads_and_anchors_as_detectron() -> None:
    with torch.device("meta"):
        model = create_model("mask_rcnn", 2, 3, 81)
    anchors = model.rpn.anchors
    assert anchors.sizes == [32, 64, 128, 256, 512] and anchors.strides == [4, 8, 16, 32, 64]
    cell = anchors.cell_anchors(32.0)
    sides = (cell[:, 2:] - cell[:, :2]).tolist()
    assert [round(h / w, 3) for h, w in sides] == [0.5, 1.0, 2.0]  # aspect ratios, same area
    assert all(math.isclose(h * w, 32 * 32, rel_tol=1e-5) for h, w in sides)
    assert model.rpn.head.objectness.out_channels == 3 and model.rpn.head.deltas.out_channels == 12
    box = model.roi_heads.box_branch
    assert box.fcs[0].in_features == 256 * 7 * 7 and box.fcs[0].out_features == 1024
    assert box.cls_score.out_features == 81 and box.bbox_pred.out_features == 80 * 4
    mask = model.roi_heads.mask_branch
    assert mask.pool == 14 and mask.head.predictor.out_channels == 80
    assert sum(1 for m in mask.head.convs if isinstance(m, torch.nn.Conv2d)) == 4


def test_fpn_level_assignment_follows_equation_1() -> None:
    boxes = torch.tensor([[0.0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 448, 448], [0, 0, 10, 10], [0, 0, 2000, 2000]])
    assert (assign_levels(boxes, 4) + 2).tolist() == [4, 3, 5, 2, 5]  # k = floor(4 + log2(sqrt(wh) / 224))


def test_mask_rcnn_3d_boxes_and_masks() -> None:
    model = _small("mask_rcnn", 3).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 32, 32, 32))
    assert out[0].boxes.shape[1] == 6 and out[0].masks.shape[1:] == (32, 32, 32)
    assert model.box_pool == 4 and model.mask_pool == 7


def test_panet_bottom_up_path_and_fused_mask_head() -> None:
    model = _small("panet")
    features = model.pyramid(torch.randn(1, 1, 64, 64))
    assert [f.shape[-1] for f in features] == [16, 8, 4, 2]  # N2..N5 keep the strides 4..32
    assert len(model.neck.down) == 3 and model.neck.down[0].conv.stride == (2, 2)
    mask = model.roi_heads.mask_branch
    assert len(mask.level_convs) == 4 and mask.mask_fc.out_features == 28 * 28  # the fc path's 28×28 mask
    assert mask.conv5_fc.conv.out_channels == mask.conv4_fc.conv.out_channels // 2  # halved before the fc
    assert len(model.roi_heads.box_branch.level_convs) == 4 and len(model.roi_heads.box_branch.convs) == 3


def test_pointrend_subdivision_schedule_and_point_head() -> None:
    with torch.device("meta"):
        model = create_model("pointrend", 2, 3, 81)
    branch = model.roi_heads.mask_branch
    assert branch.initial_side == 28 and branch.steps == 3  # 7×7 → 28×28 grid, then 3 steps to 224×224
    assert branch.point_head.fcs[0].in_features == 256 + 80 and branch.point_head.fcs[1].in_features == 256 + 80
    assert branch.prediction.out_features == 80 * 7 * 7 and branch.train_points == 14 * 14


def test_panoptic_fpn_semantic_branch_stages() -> None:
    model = _small("panoptic_fpn")
    assert [len(b) for b in model.semantic_head.branches] == [1, 1, 2, 3]  # P2..P5 (Figure 3)
    assert model.semantic_weight == 0.5


def test_upsnet_panoptic_head_is_semantic_plus_mask_logits_in_the_box() -> None:
    model = _small("upsnet")
    semantic = torch.zeros(3, 8, 8)
    semantic[0] = 1.0
    semantic[2] = 0.5
    boxes = torch.tensor([[2.0, 2.0, 6.0, 6.0]])
    masks = torch.full((1, 28, 28), 3.0)
    logits = model.panoptic_logits(semantic, boxes, torch.tensor([2]), masks)
    assert logits.shape == (2, 8, 8)
    assert torch.allclose(logits[1, 3, 3], torch.tensor(3.5), atol=1e-4)  # class logit 0.5 + mask logit 3
    assert logits[1, 0, 0] < -1e3 and logits.argmax(0)[3, 3] == 1 and logits.argmax(0)[0, 0] == 0
    assert len(model.semantic_head.subnet) == 3 and model.semantic_weight == 0.2 and model.panoptic_weight == 0.1


def test_efficientps_backbone_pyramid_and_semantic_head() -> None:
    backbone = create_backbone("efficientnet_b5", 2, 3, se=False)
    assert backbone.out_channels == [24, 40, 64, 176, 2048] and backbone.strides == [2, 4, 8, 16, 32]
    model = _small("efficientps")
    assert len(model.neck.lateral_top) == len(model.neck.lateral_bottom) == 4
    dilations = [c[0][0].dilation for c in model.semantic_head.dpc[0].convs]
    assert dilations == [(1, 6), (1, 1), (6, 21), (18, 15), (6, 3)]
    assert model.semantic_head.logits.in_channels == 4 * 8  # four 128-wide maps (8 in the small variant)


def test_panoptic_deeplab_decoders_as_the_authors_r50_config() -> None:
    with torch.device("meta"):
        model = create_model("panoptic_deeplab", 2, 3, 19)
    assert model.semantic_decoder.aspp.branches[1].conv.dilation == (3, 3)
    assert [p.conv.out_channels for p in model.semantic_decoder.project] == [128, 64, 32]
    assert [p.conv.out_channels for p in model.instance_decoder.project] == [64, 32, 16]
    assert model.center_head[-1].out_channels == 1 and model.offset_head[-1].out_channels == 2
    assert model.center_weight == 200 and model.offset_weight == 0.01 and model.head_stride == 4


def test_dextr_output_stride_psp_and_heatmap_channel() -> None:
    with torch.device("meta"):
        model = create_model("dextr", 2, 3, 2)
    assert model.backbone.in_channels == 4  # RGB and the extreme-point heatmap
    assert model.backbone.strides[-1] == 8 and model.psp.bins == (1, 2, 3, 6)
    assert model.crop_size == 512 and model.relax == 50 and model.sigma == 10 and model.threshold == 0.8
    small = _small("dextr").eval()
    image = torch.zeros(1, 64, 64)
    probs = small.segment(image, torch.tensor([[10.0, 30.0], [40.0, 30.0], [25.0, 12.0], [25.0, 50.0]]))
    assert probs.shape == (64, 64) and float(probs[0, 0]) == 0.0  # zero outside the relaxed box


def test_deeperlab_space_to_depth_decoder_and_keypoints() -> None:
    from medseg.models.panoptic.deeperlab import depth_to_space, space_to_depth

    x = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).view(2, 3, 8, 12)
    y = space_to_depth(x, 4)
    assert y.shape == (2, 48, 2, 3) and torch.equal(depth_to_space(y, 4), x)
    assert torch.equal(y[0, 0::3, 0, 0].view(4, 4), x[0, 0, :4, :4])  # one 4×4 cell: 16 channels, position-major
    with torch.device("meta"):
        model = create_model("deeperlab", 2, 3, 19)
    assert model.keypoints == 5 and model.heads["middle_range"][-1].out_channels == 2 * 4 * 2
    assert model.decoder[0][1].conv.out_channels == 4096 and model.decoder[0][0].conv.kernel_size == (7, 7)


def test_cia_net_deep_supervision_and_smooth_truncated_loss() -> None:
    from medseg.models.instance.cia_net import smooth_truncated_loss

    model = _small("cia_net")
    assert len(model.outputs(torch.randn(1, 1, 64, 64))) == 3  # strides 4, 8, 16 from the 32 level
    logits = torch.tensor([math.log(0.9 / 0.1), math.log(0.1 / 0.9)])
    target = torch.tensor([1.0, 1.0])  # p_t = 0.9 (confident right) and 0.1 (confidently wrong)
    expected = (-math.log(0.9) + (-math.log(0.3) + 0.5 * (1 - 0.01 / 0.09))) / 2
    assert smooth_truncated_loss(logits, target, 0.3).item() == pytest.approx(expected, rel=1e-5)


def test_cia_net_grows_seeds_into_touching_objects_and_drops_small_ones() -> None:
    model = _small("cia_net", min_size=5)
    dense = torch.full((1, 4, 12, 12), -10.0)  # three class logits (background first) and the contour logit
    dense[0, 0] = 10.0
    fg = torch.zeros(12, 12, dtype=torch.bool)
    fg[1:7, 1:11] = True  # two touching objects, columns 1-5 and 6-10, their border a contour
    fg[9:11, 9:11] = True  # a 4-pixel speck: no object
    dense[0, 0][fg], dense[0, 1][fg] = -10.0, 10.0
    dense[0, 3, 1:7, 5:7] = 10.0
    found = model.group(dense)[0]
    ids = found.instances
    assert len(found.classes) == 2 and found.classes.tolist() == [1, 1]
    assert set(ids[1:7, 1:5].unique().tolist()) != set(ids[1:7, 7:11].unique().tolist())  # not merged
    assert int((ids > 0).sum()) == 60 and int(ids[9:11, 9:11].sum()) == 0
