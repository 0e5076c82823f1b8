"""The steps: distill, prune, qat, quantize; each a function (artifact, config, ctx) -> artifact."""
