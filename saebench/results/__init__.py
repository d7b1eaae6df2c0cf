"""What a run's results become: the leaderboard (CSV/JSON/markdown) and the HTML report, read from the store alone."""
