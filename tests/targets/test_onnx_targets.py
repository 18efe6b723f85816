"""ONNX targets in the finished run's records: what the int8 search chose on the real student and why, and each int8
record's share. The files themselves (valid, equal to torch, really int8) are unit-tested on a tiny inline module in
``test_targets_inline.py``."""

from __future__ import annotations


def test_onnx_int8_smaller_than_fp32(manifest_json: dict) -> None:
    """int8 weights make the file clearly smaller than fp32."""
    artifacts = manifest_json["artifacts"]
    assert artifacts["onnx-int8"]["bytes"] < 0.6 * artifacts["onnx-fp32"]["bytes"]


def test_onnx_int8_records_its_choices(manifest_json: dict) -> None:
    """auto calibration tried every method with the portable settings first, then each other setting value, then
    onnxruntime's defaults, and kept the most accurate; the record holds the settings, the paired drop test, the host
    CPU's flags and the scale/zero point of the in-graph input quantization."""
    info = manifest_json["artifacts"]["onnx-int8"]["info"]
    tried = [a for a in info["attempts"] if not a["float_layers"]]
    portable = {"per_channel": True, "reduce_range": False, "activation_type": "uint8"}
    methods = ("minmax", "percentile", "entropy")
    assert [a["settings"] for a in tried[:3]] == [{"method": method, **portable} for method in methods]
    assert len(tried) == 7  # then per_channel false, reduce_range true, int8 activations: one at a time
    # and last, onnxruntime quantize_static's own defaults as a whole (per-tensor weights, S8S8)
    assert tried[-1]["settings"] == {
        "method": "minmax",
        "per_channel": False,
        "reduce_range": False,
        "activation_type": "int8",
    }
    best = max(tried, key=lambda a: (a["val_agreement"], a["val_accuracy"]))  # the first wins a tie, as in the search
    assert info["settings"]["method"] == info["calibration_method"]
    if not info["float_layers"]:  # the smallest of the files validation cannot tell from the most faithful one
        chosen = next(a for a in tried if a["settings"] == info["settings"])
        assert chosen["val_accuracy"] == info["val_accuracy"] and chosen["val_agreement"] <= best["val_agreement"]
        assert chosen["bytes"] <= best["bytes"]
        assert chosen["bytes"] == min(a["bytes"] for a in tried if a["val_agreement"] >= chosen["val_agreement"])
    assert {key: info["quantization"][key] for key in portable} == {key: info["settings"][key] for key in portable}
    assert set(info["host_cpu"]) == {"model", "avx2", "avx512", "vnni"}
    assert info["val_drop"] == round(info["fp32_val_accuracy"] - info["val_accuracy"], 2)
    assert info["within_budget"] == (not info["drop_test"]["significantly_over_budget"])
    assert (info["over_budget"] is None) == (info["within_budget"] and info["int8_share"]["macs"] >= 0.9)
    io = info["io_quantization"]["input"]
    assert io["scale"] > 0 and io["tensor"] == manifest_json["artifacts"]["onnx-int8"]["inputs"][0]["name"]


def test_onnx_int8_is_all_int8_without_fallback(manifest_json: dict) -> None:
    """The default student needs no float layer: share 1.0 of MACs and weights (the graph itself, every Conv/Gemm
    reading a dequantized activation and an int8 weight, is checked in ``test_targets_inline.py``)."""
    info = manifest_json["artifacts"]["onnx-int8"]["info"]
    assert info["float_layers"] == [], "the tiny student needs no fallback on digits"
    assert info["int8_share"]["macs"] == 1.0 and info["int8_share"]["weight_bytes"] == 1.0
    assert info["int8_share"]["float_layers"] == [] and info["int8_share"]["total_macs"] > 0


def test_every_int8_record_states_its_share(manifest_json: dict) -> None:
    """onnxruntime's defaults too: int8_share {macs, weight_bytes, total_macs, float_layers}."""
    share = manifest_json["artifacts"]["onnx-int8-ort-defaults"]["info"]["int8_share"]
    assert set(share) == {"macs", "weight_bytes", "total_macs", "float_layers"}
    assert share["total_macs"] == manifest_json["artifacts"]["onnx-int8"]["info"]["int8_share"]["total_macs"]
