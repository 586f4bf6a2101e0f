"""Tools built on the torch-free runtime for comparing and animating generations: X/Y/Z grids (grid_axes,
grid_plan, grid_layout), interpolation animations (interpolation, animation) and running many prepared
generations as shared UNet batches (batch_run). Imports no torch."""
