"""Where models come from: buckets (pull), allow-lists of sources and images, encrypted files."""
