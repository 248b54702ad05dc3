"""Side-by-side speed measurements; this package sits above everything it times."""
