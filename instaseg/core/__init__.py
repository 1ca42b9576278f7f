"""What every step of the pipeline shares: errors, file I/O, mask operations, geometry, the
``Instances`` result type and progress events. Nothing here imports from the rest of instaseg."""
