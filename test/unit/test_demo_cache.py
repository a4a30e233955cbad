"""The demo's quantized-policy cache is keyed by the policy's content, not only its folder name."""

from actquant_ros.demo import POLICIES, policy_digest, quantizer_digest


def test_policy_digest_follows_weights_config_and_stats(tmp_path):
    folder = tmp_path / "openvla-oft-small-sim"
    folder.mkdir()
    (folder / "model-00001-of-00001.safetensors").write_bytes(b"weights-a")
    (folder / "oft_config.json").write_text("{}")
    (folder / "norm_stats.json").write_text('{"a": 1}')
    (folder / "train_log.json").write_text("[]")
    d0 = policy_digest(folder)
    assert len(d0) == 10 and d0 == policy_digest(folder)
    (folder / "train_log.json").write_text("[1, 2]")  # the training log is not the policy
    assert policy_digest(folder) == d0
    for name, data in [("model-00001-of-00001.safetensors", b"weights-b"), ("norm_stats.json", '{"a": 2}'),
                       ("oft_config.json", '{"x": 1}')]:
        before = policy_digest(folder)
        f = folder / name
        f.write_bytes(data) if isinstance(data, bytes) else f.write_text(data)
        assert policy_digest(folder) != before, name


def test_bundled_policies_have_distinct_digests():
    digests = {policy_digest(folder) for folder, *_ in POLICIES.values()}
    assert len(digests) == len(POLICIES)


def test_quantizer_digest_follows_the_cli_defaults(monkeypatch):
    """A GGUF cached under other quantizer defaults (stage 2, menu, score floor, noise, row sample) gets another name."""
    import actquant_core.quant.types as P

    d0 = quantizer_digest("actquant")
    assert len(d0) == 6 and d0 == quantizer_digest("actquant") and d0 != quantizer_digest("rtn")
    monkeypatch.setattr(P, "default_stage2", lambda method, compensate="none": "fisher")
    assert quantizer_digest("actquant") != d0
    monkeypatch.undo()
    monkeypatch.setattr(P, "DEFAULT_SCORE_FLOOR", 0.0)
    assert quantizer_digest("actquant") != d0
    monkeypatch.undo()
    monkeypatch.setattr(P, "default_noise", lambda method, stage2: "bits")
    assert quantizer_digest("actquant") != d0
    monkeypatch.undo()
    monkeypatch.setattr(P, "DEFAULT_OUTPUT_ROWS", P.DEFAULT_OUTPUT_ROWS + 1)
    assert quantizer_digest("actquant") != d0
