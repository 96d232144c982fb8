"""Which teacher layer teaches which student layer.

A layer map is a list ``m`` of length ``student_layers``: student layer ``l`` is aligned with teacher
layer ``m[l]`` (0-based). Specs:

* ``"uniform"`` **[default]**: ``m[l] = ceil((l + 1) · Lt / Ls) − 1`` — 12 → 6 takes teacher layers
  1, 3, 5, 7, 9, 11 (every second layer, ending on the last one); equal depths give the identity.
* ``"last"``: align from the end, ``m[l] = Lt − Ls + l`` (the student's last layer ↔ the teacher's last
  layer; 12 → 4 gives 8, 9, 10, 11).
* ``"first"``: ``m[l] = l`` (12 → 4 gives 0, 1, 2, 3).
* an explicit list (or tuple) of ``student_layers`` teacher indices; negative indices count from the end.
"""

from __future__ import annotations

from collections.abc import Sequence

LAYER_MAP_SPECS = ("uniform", "last", "first")


def resolve_layer_map(spec: str | Sequence[int], teacher_layers: int, student_layers: int) -> list[int]:
    """Resolve a layer-map spec to a list of teacher layer indices, one per student layer.

    Args:
        spec: ``"uniform"``, ``"last"``, ``"first"`` or an explicit list of teacher layer indices.
        teacher_layers: number of teacher layers ``Lt`` (≥ 1).
        student_layers: number of student layers ``Ls`` (≥ 1).

    Returns:
        ``[m_0, ..., m_{Ls-1}]`` with ``0 ≤ m_l < Lt``.

    Raises:
        ValueError: unknown spec name; non-positive depths; a named spec with ``Ls > Lt``; an explicit
            list of the wrong length, with a non-integer entry or an index outside ``[-Lt, Lt)``.
    """
    if teacher_layers < 1 or student_layers < 1:
        raise ValueError(
            f"layer counts must be >= 1, got teacher_layers={teacher_layers}, student_layers={student_layers}"
        )
    if isinstance(spec, str):
        if spec not in LAYER_MAP_SPECS:
            raise ValueError(
                f"unknown layer map {spec!r}; use one of {LAYER_MAP_SPECS} or a list of "
                f"{student_layers} teacher layer indices"
            )
        if student_layers > teacher_layers:
            raise ValueError(
                f"layer map {spec!r} needs student_layers <= teacher_layers, got "
                f"{student_layers} > {teacher_layers}; pass an explicit list instead"
            )
        if spec == "uniform":
            # ceil((l+1)·Lt/Ls) − 1 with integer arithmetic: ceil(a/b) = -(-a // b)
            return [-(-(ls + 1) * teacher_layers // student_layers) - 1 for ls in range(student_layers)]
        if spec == "last":
            return [teacher_layers - student_layers + ls for ls in range(student_layers)]
        return list(range(student_layers))
    layers = list(spec)
    if len(layers) != student_layers:
        raise ValueError(
            f"explicit layer map {layers} has {len(layers)} entries; the student has "
            f"{student_layers} layers (one teacher index per student layer)"
        )
    out = []
    for ls, t in enumerate(layers):
        if isinstance(t, bool) or not isinstance(t, int):
            raise ValueError(f"layer map entry {ls} is {t!r}; expected an int teacher layer index")
        if not -teacher_layers <= t < teacher_layers:
            raise ValueError(
                f"layer map entry {ls} is {t}, out of range for a teacher with "
                f"{teacher_layers} layers (valid: 0..{teacher_layers - 1}, or negative from the end)"
            )
        out.append(t % teacher_layers)
    return out
