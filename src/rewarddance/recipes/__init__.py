"""Recipes: one readable file per job (train_rm, ...), each wiring components; configs/*.yaml beside them.
Components never import recipes."""
