"""The experiment suite: grids of TWM runs on this machine or on Slurm (submitit), tracked in MLflow."""
