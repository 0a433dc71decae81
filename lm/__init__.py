"""The mmtok token LM (importing :mod:`lm` registers it with AutoConfig / AutoModelForCausalLM)."""
