"""The method's arithmetic, written once and backend-neutral: rollout, tracking, selection."""
