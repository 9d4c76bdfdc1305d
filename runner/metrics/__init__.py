"""One metric per module: size, BLEU/chrF, WER, latency."""
