"""Deploy plans: the plan file, its variables, and the schedule of what runs where."""
