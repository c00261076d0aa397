"""Group ``pretrain``: pretrained_model (and its torchrun worker) and perplexity_report."""
