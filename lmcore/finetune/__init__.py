"""Fine-tuning: ChatML rendering, SFT data and training, task adaptation, classifiers, derived tasks.

The top layer of lmcore: builds on data, model, train and eval.
"""
