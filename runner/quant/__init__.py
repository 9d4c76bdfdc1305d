"""Quantization beyond a plugin's `apply`: which parts and modules int8 touches (`parts`), activation ranges
(`observers`), SmoothQuant's rescaling (`smoothing`), what int8 breaks (`sensitivity`), a plan within a BLEU
budget (`tuning`) and their written results (`report`). The quantization plugins (runner.plugins) and the
`runner sensitivity` / `runner tune` commands are built on these."""
