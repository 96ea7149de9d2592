"""What every target shares: the stage model, stamps and executor (stages), manifests, work-area paths."""
