"""Human review: the annotator queue, decisions and their undo, assignments, agreement and dataset stats."""
