"""C++/CUDA sources for the PSAL kernels, shipped as package data and built on first use."""
