"""One run, start to finish: plan, model, data, training, measurement, record."""
