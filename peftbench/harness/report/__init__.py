"""From records to answers: aggregation, leaderboards, plots, paired comparisons."""
