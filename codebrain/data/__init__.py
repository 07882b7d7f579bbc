"""Raw data to training-ready slices: readers, phantom, registration, slice store, dataset."""
