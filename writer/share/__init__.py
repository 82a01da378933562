"""What a set's users read: verify, publish, the dataset card and its snippets, previews."""
