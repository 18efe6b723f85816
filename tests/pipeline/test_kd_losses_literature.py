"""Losses from the literature (DKD, logit-standardized KD) against values computed by hand with numpy, from the
papers' definitions rather than from the code under test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.training.losses import LOSSES, Outputs, check_loss_params

STUDENT = np.array([[2.0, 0.5, -1.0], [0.1, 1.2, 0.3]])
TEACHER = np.array([[3.0, -0.5, 0.2], [-1.0, 2.5, 1.0]])
LABELS = np.array([0, 2])


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """Mean over rows of KL(p ‖ q)."""
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))


def _ce(z: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(_softmax(z)[np.arange(len(y)), y])))


def _value(name: str, **params) -> float:
    loss = LOSSES.get(name)(None, None, None, **params)
    s, t = torch.tensor(STUDENT, dtype=torch.float64), torch.tensor(TEACHER, dtype=torch.float64)
    return float(loss(Outputs(s), Outputs(t), torch.tensor(LABELS)))


def test_dkd_matches_its_definition() -> None:
    """TCKD: KL of the (target, non-target) mass split; NCKD: KL over the non-target classes alone; both × T²."""
    alpha, beta, temperature, ce_weight = 1.0, 8.0, 4.0, 1.0
    ps, pt = _softmax(STUDENT / temperature), _softmax(TEACHER / temperature)
    rows = np.arange(len(LABELS))
    binary_s = np.stack([ps[rows, LABELS], 1 - ps[rows, LABELS]], axis=1)
    binary_t = np.stack([pt[rows, LABELS], 1 - pt[rows, LABELS]], axis=1)
    others = np.ones_like(STUDENT, dtype=bool)
    others[rows, LABELS] = False
    nontarget_s = _softmax(STUDENT[others].reshape(2, 2) / temperature)
    nontarget_t = _softmax(TEACHER[others].reshape(2, 2) / temperature)
    expected = ce_weight * _ce(STUDENT, LABELS) + temperature**2 * (
        alpha * _kl(binary_t, binary_s) + beta * _kl(nontarget_t, nontarget_s)
    )
    assert _value("dkd") == pytest.approx(expected, rel=1e-9)
    assert _value("dkd", beta=0.0, ce_weight=0.0) == pytest.approx(temperature**2 * _kl(binary_t, binary_s), rel=1e-9)


def test_logit_standardized_kd_matches_its_definition() -> None:
    """Z-scored logits (std with Bessel's correction), then Hinton's KL at the base temperature, weighted."""
    temperature, kd_weight, ce_weight = 2.0, 9.0, 0.1

    def z(x: np.ndarray) -> np.ndarray:
        return (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, ddof=1, keepdims=True)

    soft = _kl(_softmax(z(TEACHER) / temperature), _softmax(z(STUDENT) / temperature))
    expected = ce_weight * _ce(STUDENT, LABELS) + kd_weight * temperature**2 * soft
    assert _value("lskd") == pytest.approx(expected, rel=1e-6)
    shifted = _value("lskd", ce_weight=0.0)
    # invariant to the scale and shift of either model's logits: only their relations are matched
    s = torch.tensor(STUDENT * 3.0 + 7.0)
    loss = LOSSES.get("lskd")(None, None, None, ce_weight=0.0)
    assert float(loss(Outputs(s), Outputs(torch.tensor(TEACHER)), torch.tensor(LABELS))) == pytest.approx(shifted)


@pytest.mark.parametrize(
    ("name", "params", "fragment"),
    [
        ("dkd", {"beta": -1.0}, "parameter 'beta' should be greater than or equal to 0; got -1.0"),
        ("dkd", {"ce_weight": -1}, "parameter 'ce_weight' should be greater than or equal to 0; got -1"),
        ("lskd", {"temperature": 0.0}, "parameter 'temperature' should be greater than 0"),
        ("hinton", {"alpha": 5}, "parameter 'alpha' should be less than or equal to 1"),
        ("hinton", {"temperature": True}, "parameter 'temperature' should be a valid number"),
    ],
)
def test_bad_values_are_config_errors_when_the_config_is_read(
    tiny_config_dict: dict, name: str, params: dict, fragment: str
) -> None:
    """Out-of-range values are caught with the config (before any run directory or training), naming the entry."""
    from pipeline.config_load import parse_config

    tiny_config_dict["distill"]["losses"] = [{"name": "ce"}, {"name": name, **params}]
    with pytest.raises(ConfigError) as caught:
        parse_config(tiny_config_dict)
    assert caught.value.one_line().startswith(f"distill.losses.1: loss {name!r} {fragment}")


def test_unknown_parameter_names_the_accepted_ones() -> None:
    with pytest.raises(ConfigError, match="takes: alpha, beta, temperature, ce_weight"):
        check_loss_params("dkd", {"gamma": 1.0})
