"""Rendering what a run measured: Markdown and HTML report sections, plots, the accuracy gate, sanity warnings,
run comparison and the release bundle's README."""
