"""A trained run on new data: scoring files at their own size (predictor), SavedModel/StableHLO export
(exporter, export_preprocess), atomic locked output folders (output_dir)."""
