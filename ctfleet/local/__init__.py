"""The whole stack on one machine (outer ring): moto server, pollers playing the Lambda
event sources, the API server playing API Gateway, a local IMDS per worker, provisioning.

Same handlers and worker as on AWS; only endpoints differ.

May import: anything. Importing this package is cheap: the stack lives in
:mod:`.stack` and starts nothing until asked.
"""
