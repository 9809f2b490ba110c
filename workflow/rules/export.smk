# A variant's merged weights in the trail's own format, with its coefficients and a model card.
rule export:
    input:
        unpack(export_inputs),
    output:
        card=export_card("{model}", "{variant}"),
    log:
        LAYOUT.log("export", "{model}-{variant}"),
    conda:
        "../../envs/torch.yaml"
    threads: 1
    params:
        cfg=model_json("export"),
        sources=variant_args,
        out_dir=export_folder,
    shell:
        "lcsc export --config-json {params.cfg:q} --threads {threads:q}"
        " --wildcards model={wildcards.model:q},variant={wildcards.variant:q}"
        " --model {wildcards.model:q} --variant {wildcards.variant:q} --manifest {input.manifest:q}"
        " {params.sources:q} --evaluations {input.evaluations:q} --real {input.real:q}"
        " --out-dir {params.out_dir:q} 2>&1 | tee {log:q}"
