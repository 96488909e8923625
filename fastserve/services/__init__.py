"""The services: what each method of TF Serving's API, the Open Inference Protocol (V2), health
and the model repository means, written once for every transport."""
