"""The report: the leaderboard's file layout (one place), its tables as Markdown and terminal text, its
figures and its offline page."""
