"""Language modelling: data, the training task, evaluation and the trained-model facade."""
