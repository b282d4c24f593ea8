"""Model shapes for timing with random weights and for memory plans (data only: no torch)."""

# Pythia shapes, for timing with random weights (timings do not depend on weight values) and memory plans.
SHAPES = {
    "pythia-6.9b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=16384,
                        vocab_size=50432),
    "pythia-410m": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                        vocab_size=50304),
    "pythia-70m": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048,
                       vocab_size=50304),
}
