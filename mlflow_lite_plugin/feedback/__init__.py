"""Human feedback on traced calls, few-shot learning from it, and fine-tuning datasets."""
