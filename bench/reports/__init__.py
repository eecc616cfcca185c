"""Reports rebuilt from the tidy results table: paper tables, figures, leaderboard, HTML page."""
