"""fleetstage fleet simulator."""
