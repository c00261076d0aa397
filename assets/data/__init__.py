"""Group ``data``: raw_corpus, clean_corpus, splits, tokenizer, token_shards."""
