"""Group ``finetune``: sft_dataset, sft_model, labeled_data, classifier_report."""
