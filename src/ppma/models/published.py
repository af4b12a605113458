"""The published checkpoints' key names and ours: one table of renames, applied both ways.

The published code keeps each stage's downsample at the end of stage i (ours: start of stage i + 1),
names the attention ``retention`` and its decay generator ``path_embed``, and stores the rotary angles
(``Relpos``), which we recompute. Imported by the model (timm's ``pretrained_filter_fn``) and by
``ppma.checkpoint``; it imports neither.
"""

from __future__ import annotations

import re

import torch

__all__ = ["checkpoint_filter_fn", "is_published", "published_state_dict"]

# (published key, our key): {i} stage, {j} block, {n} any index, {r} the rest of the key.
_RENAMES = [
    ("patch_embed.proj.{n}.{r}", "stem.{n}.{r}"),
    ("layers.{i}.blocks.{j}.retention_layer_norm.{r}", "stages.{i}.blocks.{j}.norm1.{r}"),
    ("layers.{i}.blocks.{j}.final_layer_norm.{r}", "stages.{i}.blocks.{j}.norm2.{r}"),
    ("layers.{i}.blocks.{j}.retention.path_embed.{r}", "stages.{i}.blocks.{j}.attn.decay.{r}"),
    ("layers.{i}.blocks.{j}.retention.{r}", "stages.{i}.blocks.{j}.attn.{r}"),
    ("layers.{i}.blocks.{j}.gamma_1", "stages.{i}.blocks.{j}.ls1.gamma"),
    ("layers.{i}.blocks.{j}.gamma_2", "stages.{i}.blocks.{j}.ls2.gamma"),
    ("layers.{i}.blocks.{j}.{r}", "stages.{i}.blocks.{j}.{r}"),
    ("layers.{i}.downsample.{r}", "stages.{i+1}.downsample.{r}"),  # published: end of stage i
    ("outnorm{n}.{r}", "norms.{n}.{r}"),
    ("proj.{r}", "head.proj.{r}"),
    ("norm.{r}", "head.norm.{r}"),
    ("head.{r}", "head.fc.{r}"),
]
_DROPPED = re.compile(r"^layers\.\d+\.Relpos\.")  # rotary angles: recomputed, not learned


def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for field, group in (("{i+1}", r"(?P<ip>\d+)"), ("{i}", r"(?P<i>\d+)"), ("{j}", r"(?P<j>\d+)"),
                         ("{n}", r"(?P<n>\d+)"), ("{r}", r"(?P<r>.+)")):  # fmt: skip
        pattern = pattern.replace(re.escape(field), group)
    return re.compile(f"^{pattern}$")


def _fill(template: str, groups: dict[str, str]) -> str:
    if "ip" in groups:  # {i+1} matched: give back stage i
        groups = dict(groups, i=str(int(groups["ip"]) - 1))
    if "i" in groups:
        template = template.replace("{i+1}", str(int(groups["i"]) + 1))
    for key, value in groups.items():
        template = template.replace("{" + key + "}", value)
    return template


_TO_OURS = [(_template_regex(pub), ours) for pub, ours in _RENAMES]
_TO_PUBLISHED = [(_template_regex(ours), pub) for pub, ours in _RENAMES]


def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, template in rules:
        m = pattern.match(key)
        if m:
            return _fill(template, m.groupdict())
    return None


def is_published(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether the keys are the published code's (``layers.*``, ``patch_embed.*``)."""
    return any(k.startswith(("layers.", "patch_embed.")) for k in state_dict)


def checkpoint_filter_fn(
    state_dict: dict[str, torch.Tensor], model: object = None
) -> dict[str, torch.Tensor]:
    """Map a published state dict to our key names; ours passes through unchanged.

    ``model`` is unused: the argument completes timm's filter signature."""
    if not is_published(state_dict):
        return dict(state_dict)
    out = {}
    for key, value in state_dict.items():
        if _DROPPED.match(key):
            continue
        new = _rename(key, _TO_OURS)
        out[new if new is not None else key] = value
    return out


def published_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict in the published key names (for round-trip tests and export to the published code)."""
    out = {}
    for key, value in state_dict.items():
        new = _rename(key, _TO_PUBLISHED)
        out[new if new is not None else key] = value
    return out
