"""What both session kinds share: the model and its context, the results they return."""
