rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        result=LAYOUT.eval_json("{model}", "{variant}"),
        grid=LAYOUT.eval_grid("{model}", "{variant}"),
    log:
        LAYOUT.log("evaluate", "{model}-{variant}"),
    benchmark:
        LAYOUT.benchmark("evaluate", "{model}-{variant}")
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        gpu=GPUS,
    params:
        cfg=model_json("evaluate"),
        sources=variant_args,
    shell:
        "lcsc evaluate --config-json {params.cfg:q} --threads {threads:q}"
        " --wildcards model={wildcards.model:q},variant={wildcards.variant:q}"
        " --model {wildcards.model:q} --variant {wildcards.variant:q} --manifest {input.manifest:q}"
        " --features {input.features:q} --stats {input.stats:q} {params.sources:q}"
        " --out {output.result:q} --grid {output.grid:q} > {log:q} 2>&1"
