"""Reference data installed with cnnviz (see README.md in this folder); read by cnnviz.labels."""
