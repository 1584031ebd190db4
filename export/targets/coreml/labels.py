"""Read the class labels of a Core ML ML-program classifier (they live in its ``classify`` op)."""
from __future__ import annotations


def classifier_labels(spec) -> list[str]:
    """Labels in class-index order, from the ``classes`` argument of the program's ``classify`` op."""
    main = spec.mlProgram.functions["main"]
    block = main.block_specializations[main.opset]
    for op in block.operations:
        if op.type == "classify":
            items = op.inputs["classes"].arguments[0].value.immediateValue.list.values
            labels = []
            for item in items:
                tensor = item.immediateValue.tensor
                labels.append(tensor.strings.values[0] if tensor.strings.values else int(tensor.longInts.values[0]))
            return labels
    raise ValueError("this Core ML model has no classify op, so it carries no class labels")
