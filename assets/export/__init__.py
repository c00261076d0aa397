"""Group ``export``: hf_export, the promoted models in Hugging Face format (after the evaluation's gate)."""
