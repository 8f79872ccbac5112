"""Student, teacher, the shared DINO head and the Patch Matching Module (docs/training-recipe.md §5, §6).

Parameter names follow the official checkpoints: the backbone's are `tcore.TCoReBackbone`'s
(timm's, with the official parameterisation: the class token's position embedding is its own
tensor `cls_pos_embed`, as `pos_embed[:, :1]` is updated in the official code), the head's are
`mlp.{0,2,4}.*` and `last_layer.weight_g` / `last_layer.weight_v`, the PMM's are
`decoder.{i}.auxiliary_{cross_attn,self_attn}.{in_proj_weight,in_proj_bias,out_proj.*}`,
`decoder.{i}.auxiliary_layer_norm{1,2,3}.*` and `decoder.{i}.auxiliary_linear.*`. So the
official param-group rules (layer decay by `blocks.i`, no weight decay on `.bias`/norm/gamma,
`last_layer`, `auxiliary`) apply to the names directly.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

import tcore
from training.batch import Batch
from training.config import ModelConfig
from training.losses import Centers, teacher_probs

__all__ = ["TokenBackbone", "WeightNormLinear", "DINOHead", "PatchMatchingModule", "Student", "build_student", "build_teacher",
           "teacher_pairs", "update_teacher", "teacher_targets", "compile_models"]


class TokenBackbone(tcore.TCoReBackbone):
    """`tcore.TCoReBackbone` whose forward returns the token dict, so that torch.compile (which
    compiles `forward`) and DDP see the whole computation in one call.
    """

    def forward(self, x: torch.Tensor,  # type: ignore[override]
                masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """(B, 3, H, W), optional (B, h*w) bool masks -> "cls" (B, D), "registers" (B, R, D), "patches" (B, h, w, D)."""
        return self.forward_features_dict(x, masks)


class WeightNormLinear(nn.Module):
    """Bias-free Linear with weight normalisation per output row: W = g * v / ||v||.

    Same parameters as `torch.nn.utils.weight_norm(nn.Linear(in, out, bias=False))` (`weight_g`
    (out, 1), `weight_v` (out, in)), with g initialised to 1 and trainable, as the reference.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        v = torch.empty(out_features, in_features)
        nn.init.kaiming_uniform_(v, a=math.sqrt(5))  # nn.Linear's default init
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)  # (out, in)
        return F.linear(x, weight)


class DINOHead(nn.Module):
    """MLP (D -> hidden -> hidden -> bottleneck, GELU), L2 normalisation, weight-normed prototypes.

    Args:
        in_dim: D.
        n_prototypes: K logits.
        hidden_dim, bottleneck_dim, n_layers: the MLP (official 2048, 256, 3).
    """

    def __init__(self, in_dim: int, n_prototypes: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 n_layers: int = 3) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i in range(n_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < n_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, n_prototypes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(R, D) -> (R, K) logits (cosine x g)."""
        x = self.mlp(x)
        x = F.normalize(x.float(), dim=-1, eps=1e-6).to(x.dtype)  # eps as the reference's fp16 head
        return self.last_layer(x)


class _Attention(nn.Module):
    """Multi-head attention with `nn.MultiheadAttention`'s parameters, through fused SDPA."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)  # nn.MultiheadAttention's init
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """(B, Nq, D) queries attending to (B, Nk, D) keys/values -> (B, Nq, D)."""
        b, nq, d = query.shape
        w_q, w_kv = self.in_proj_weight.split([d, 2 * d])
        b_q, b_kv = self.in_proj_bias.split([d, 2 * d])
        q = F.linear(query, w_q, b_q).view(b, nq, self.num_heads, -1).transpose(1, 2)  # (B, h, Nq, d/h)
        k, v = F.linear(context, w_kv, b_kv).view(b, -1, 2, self.num_heads, d // self.num_heads).permute(
            2, 0, 3, 1, 4)  # (2, B, h, Nk, d/h)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, Nq, d/h)
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, d))


class _PMMBlock(nn.Module):
    """Cross-attention to the auxiliary frame (branch x scale), self-attention, linear FFN; post-norm."""

    def __init__(self, dim: int, num_heads: int, branch_scale: float) -> None:
        super().__init__()
        self.branch_scale = branch_scale
        self.auxiliary_cross_attn = _Attention(dim, num_heads)
        self.auxiliary_layer_norm1 = nn.LayerNorm(dim)
        self.auxiliary_self_attn = _Attention(dim, num_heads)
        self.auxiliary_layer_norm2 = nn.LayerNorm(dim)
        self.auxiliary_linear = nn.Linear(dim, dim)
        self.auxiliary_layer_norm3 = nn.LayerNorm(dim)

    def forward(self, aux: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        c = self.auxiliary_layer_norm1(self.branch_scale * self.auxiliary_cross_attn(q, aux) + q)
        s = self.auxiliary_layer_norm2(self.auxiliary_self_attn(c, c) + c)
        return self.auxiliary_layer_norm3(self.auxiliary_linear(s) + s)


class PatchMatchingModule(nn.Module):
    """PMM: reconstruct the current frame's tokens from an auxiliary frame's tokens.

    Args:
        dim: D. num_heads: attention heads (official 16). num_blocks: stacked blocks (official 1;
        more chain the output as the next query). branch_scale: cross-attention branch factor (4).
    """

    def __init__(self, dim: int, num_heads: int = 16, num_blocks: int = 1, branch_scale: float = 4.0) -> None:
        super().__init__()
        self.decoder = nn.ModuleList(_PMMBlock(dim, num_heads, branch_scale) for _ in range(num_blocks))

    def forward(self, aux: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """aux (B, N, D) auxiliary tokens, q (B, N, D) student tokens -> (B, N, D)."""
        for block in self.decoder:
            q = block(aux, q)
        return q


class Student(nn.Module):
    """Everything that gets gradients, in one module so that DDP sees one forward.

    Attributes:
        backbone: TokenBackbone (train mode, drop path on).
        dino_head: DINOHead shared by DINO and iBOT.
        pmm: PatchMatchingModule.
    """

    def __init__(self, backbone: nn.Module, dino_head: DINOHead, pmm: PatchMatchingModule) -> None:
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head
        self.pmm = pmm

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The student side of a step (docs/training-recipe.md §6.2–§6.5).

        Args:
            batch: the micro-batch with normalised crops (`training.batch.Batch`); read are the
                global crops (2b, 3, G, G) with their masks (2b, N), the local crops (L*b, 3, l, l),
                the past and future views (n, 3, G, G) of the `aux_rows` (n,), and `aux_mask_index` (M,).

        Returns:
            "local_logits" (L*b, K), "global_logits" (2b, K), "past_logits" and "future_logits"
            (M, K) at the M masked patches (row-major over (row, patch)), "global_cls" (2b, D).
        """
        with torch.no_grad():  # auxiliary features: the student in train mode, no gradient (recipe §6.2)
            aux = self.backbone(torch.cat([batch.past, batch.future]))["patches"].flatten(1, 2)  # (2n, N, D)
        aux_past, aux_future = aux.chunk(2)
        cur = self.backbone(batch.globals, batch.masks)
        loc = self.backbone(batch.locals)
        q = cur["patches"].flatten(1, 2)[batch.aux_rows]  # (n, N, D): only masked crops are supervised
        rec = self.pmm(torch.cat([aux_past, aux_future]), torch.cat([q, q]))  # (2n, N, D)
        rec_past, rec_future = (r.flatten(0, 1)[batch.aux_mask_index] for r in rec.chunk(2))  # (M, D) each
        rows = [loc["cls"], cur["cls"], rec_past, rec_future]
        logits = self.dino_head(torch.cat(rows))  # one head call for every row (the reference makes two)
        local_logits, global_logits, past_logits, future_logits = logits.split([r.shape[0] for r in rows])
        return {"local_logits": local_logits, "global_logits": global_logits, "past_logits": past_logits,
                "future_logits": future_logits, "global_cls": cur["cls"]}


def build_student(cfg: ModelConfig) -> Student:
    """Student backbone (tcore, random init, train mode), head and PMM."""
    backbone = TokenBackbone(**cfg.as_kwargs())
    head = DINOHead(cfg.embed_dim, cfg.head_n_prototypes, cfg.head_hidden_dim, cfg.head_bottleneck_dim,
                    cfg.head_n_layers)
    pmm = PatchMatchingModule(cfg.embed_dim, cfg.pmm_num_heads, cfg.pmm_num_blocks, cfg.pmm_branch_scale)
    return Student(backbone, head, pmm).train()


def build_teacher(student: Student) -> nn.ModuleDict:
    """The EMA teacher: a copy of the student's backbone and head, eval mode, no gradients."""
    teacher = nn.ModuleDict({"backbone": copy.deepcopy(student.backbone),
                             "dino_head": copy.deepcopy(student.dino_head)})
    teacher.eval().requires_grad_(False)
    return teacher


def teacher_pairs(student: Student, teacher: nn.ModuleDict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(teacher params, matching student params) for the EMA, in the same order."""
    t, s = [], []
    for name in ("backbone", "dino_head"):
        s_params = dict(getattr(student, name).named_parameters())
        for key, p in teacher[name].named_parameters():
            t.append(p)
            s.append(s_params[key])
    return t, s


@torch.no_grad()
def update_teacher(teacher_params: list[torch.Tensor], student_params: list[torch.Tensor], momentum: float) -> None:
    """theta_t <- m * theta_t + (1 - m) * theta_s over the backbone and the head (not the PMM)."""
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)


@torch.no_grad()
def teacher_targets(teacher: nn.ModuleDict, globals_: torch.Tensor, mask_index: torch.Tensor, centers: Centers,
                    temp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher probabilities of a micro-batch (docs/training-recipe.md §6.1) and its contribution to the centres.

    Args:
        teacher: the EMA teacher (eval mode).
        globals_: (2b, 3, G, G) unmasked current-frame global crops, crop-major.
        mask_index: (M,) flat positions row * N + patch of the student's masked patches.
        centers: `training.losses.Centers` (read, and this batch's means queued).
        temp: teacher temperature of this step.

    Returns:
        (2b, K) CLS probabilities in crop-swapped order (row r targets student row r) and (M, K)
        probabilities of the teacher's own tokens at the masked patches, both float32.
    """
    out = teacher["backbone"](globals_)
    cls = out["cls"]                                      # (2b, D)
    swapped = torch.cat(cls.chunk(2)[::-1])               # crop 1 rows, then crop 0 rows
    patches = out["patches"].flatten(0, 2)[mask_index]    # (M, D), row-major over (crop row, patch)
    logits = teacher["dino_head"](torch.cat([swapped, patches]))  # one head call
    cls_logits, patch_logits = logits.split([swapped.shape[0], patches.shape[0]])
    centers.accumulate(cls_logits, patch_logits)
    return teacher_probs(cls_logits, centers.dino, temp), teacher_probs(patch_logits, centers.ibot, temp)


def compile_models(student: Student, teacher: nn.ModuleDict, backend: str = "inductor") -> None:
    """torch.compile in place (state_dict names unchanged): backbones with static shapes, heads dynamic.

    The backbones see three input shapes (global, local, auxiliary batches); static shapes give one
    graph each, and avoid symbolic sizes in the antialiased bicubic position-embedding resize,
    whose backward inductor cannot compile with dynamic shapes. The heads see a varying number of
    masked-patch rows, hence dynamic.
    """
    for module in (student.backbone, teacher["backbone"]):
        module.compile(dynamic=False, backend=backend)
    for module in (student.dino_head, teacher["dino_head"]):
        module.compile(dynamic=True, backend=backend)
