"""Scoring a run: exact AUCs, AUPRO and thresholds (metrics), gathered eval outputs and results.json (results),
ROC/loss curves and results.md (reports), heatmap figures (figures), sweep tables (summary)."""
